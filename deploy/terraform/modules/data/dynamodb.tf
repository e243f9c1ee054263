# Function metadata and job records. On-demand capacity, point-in-time recovery, and deletion
# protection: losing either table loses user state that exists nowhere else.

resource "aws_dynamodb_table" "functions" {
  #checkov:skip=CKV_AWS_119:Encrypted at rest with the AWS managed key; a customer managed key would add kms grants to both instance roles for no gain in this single-account setup.
  name         = var.functions_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "functionId"

  attribute {
    name = "functionId"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  deletion_protection_enabled = true

  tags = { Name = var.functions_table_name }
}

resource "aws_dynamodb_table" "jobs" {
  #checkov:skip=CKV_AWS_119:Encrypted at rest with the AWS managed key; a customer managed key would add kms grants to both instance roles for no gain in this single-account setup.
  name         = var.jobs_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "jobId"

  attribute {
    name = "jobId"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  deletion_protection_enabled = true

  tags = { Name = var.jobs_table_name }
}

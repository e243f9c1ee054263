# Function metadata, job records and API keys. On-demand capacity, point-in-time recovery, and
# deletion protection: losing any of these tables loses state that exists nowhere else (a lost
# keys table would also reopen the API to everyone: it is open while no key exists).

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

# API keys (nanogrid/keys.py): one item per key id, the secret stored only as its SHA-256. Written
# by `nanogrid keys` on a controller, read by the API on every request it has not cached.
resource "aws_dynamodb_table" "keys" {
  #checkov:skip=CKV_AWS_119:Encrypted at rest with the AWS managed key; a customer managed key would add kms grants to both instance roles for no gain in this single-account setup.
  name         = var.keys_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "keyId"

  attribute {
    name = "keyId"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  deletion_protection_enabled = true

  tags = { Name = var.keys_table_name }
}

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

# Job records, with the indexes of nanogrid/storage/__init__.py (TABLES): `due`, a sparse index of
# the unfinished jobs by status, in the order the reaper must look at them again (PENDING by
# redispatch time, PROCESSING by lease expiry), which the reaper sweeps, so a job is found whatever
# Redis lost; `tenant_jobs` and `function_jobs`, the history (GET /jobs) by creation time. A finished
# job's record expires NANOGRID_JOB_RETENTION_DAYS after it ended (TTL on expires_at).
resource "aws_dynamodb_table" "jobs" {
  #checkov:skip=CKV_AWS_119:Encrypted at rest with the AWS managed key; a customer managed key would add kms grants to both instance roles for no gain in this single-account setup.
  name         = var.jobs_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "jobId"

  attribute {
    name = "jobId"
    type = "S"
  }

  attribute {
    name = "due_pk"
    type = "S"
  }

  attribute {
    name = "due_sk"
    type = "S"
  }

  attribute {
    name = "tenant_jobs_pk"
    type = "S"
  }

  attribute {
    name = "tenant_jobs_sk"
    type = "S"
  }

  attribute {
    name = "function_jobs_pk"
    type = "S"
  }

  attribute {
    name = "function_jobs_sk"
    type = "S"
  }

  global_secondary_index {
    name            = "due"
    hash_key        = "due_pk"
    range_key       = "due_sk"
    projection_type = "ALL"
  }

  global_secondary_index {
    name            = "tenant_jobs"
    hash_key        = "tenant_jobs_pk"
    range_key       = "tenant_jobs_sk"
    projection_type = "ALL"
  }

  global_secondary_index {
    name            = "function_jobs"
    hash_key        = "function_jobs_pk"
    range_key       = "function_jobs_sk"
    projection_type = "ALL"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
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

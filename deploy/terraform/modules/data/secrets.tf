# Secrets Manager: the GCP service-account JSON (its value is put by an operator with
# `aws secretsmanager put-secret-value`, never by Terraform or the repository) and the Redis
# AUTH token (generated here; it lives in the Terraform state, so keep the state encrypted).

resource "aws_secretsmanager_secret" "gcp_credentials" {
  #checkov:skip=CKV_AWS_149:Encrypted with the AWS managed key aws/secretsmanager; a customer managed key would add kms:Decrypt grants to the instance roles.
  #checkov:skip=CKV2_AWS_57:Rotation is an operator runbook (README): a new GCP key is created in GCP, and a new Redis AUTH token must be rolled together with the env files; there is no rotation Lambda.
  name                    = var.gcp_credentials_secret_name
  description             = "GCP service-account JSON the workers use for the Cloud Storage archive"
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret" "redis_auth" {
  #checkov:skip=CKV_AWS_149:Encrypted with the AWS managed key aws/secretsmanager; a customer managed key would add kms:Decrypt grants to the instance roles.
  #checkov:skip=CKV2_AWS_57:Rotation is an operator runbook (README): a new GCP key is created in GCP, and a new Redis AUTH token must be rolled together with the env files; there is no rotation Lambda.
  name                    = var.redis_auth_secret_name
  description             = "AUTH token of the NanoGrid ElastiCache Redis"
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "redis_auth" {
  secret_id     = aws_secretsmanager_secret.redis_auth.id
  secret_string = random_password.redis_auth.result
}

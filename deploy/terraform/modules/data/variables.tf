variable "name" {
  description = "Prefix for resource names (the project name)."
  type        = string
}

variable "account_id" {
  description = "AWS account ID, used in the user-data and log bucket names."
  type        = string
}

variable "code_bucket_name" {
  description = "Name of the S3 bucket for uploaded code."
  type        = string
}

variable "job_retention_days" {
  description = "Days a finished job's record and stored output are kept (NANOGRID_JOB_RETENTION_DAYS)."
  type        = number
}

variable "user_data_bucket_prefix" {
  description = "Prefix of the user-data bucket name; the account ID is appended."
  type        = string
}

variable "functions_table_name" {
  description = "DynamoDB table of function metadata (partition key functionId)."
  type        = string
}

variable "jobs_table_name" {
  description = "DynamoDB table of job records (partition key jobId)."
  type        = string
}

variable "keys_table_name" {
  description = "DynamoDB table of API keys (partition key keyId)."
  type        = string
}

variable "task_queue_name" {
  description = "Name of the SQS task queue."
  type        = string
}

variable "queue_visibility_timeout_seconds" {
  description = "Default visibility timeout of the task queue."
  type        = number
}

variable "build_queue_visibility_timeout_seconds" {
  description = "Visibility timeout of the builds queue: longer than a layer build may take."
  type        = number
}

variable "dlq_max_receive_count" {
  description = "Receives after which SQS moves a message to the dead-letter queue."
  type        = number
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
}

variable "redis_engine_version" {
  description = "ElastiCache Redis engine version."
  type        = string
}

variable "redis_subnet_ids" {
  description = "Private subnets for the ElastiCache subnet group."
  type        = list(string)
}

variable "redis_az" {
  description = "Availability zone of the single Redis node."
  type        = string
}

variable "redis_security_group_id" {
  description = "Security group of the Redis node."
  type        = string
}

variable "gcp_credentials_secret_name" {
  description = "Secrets Manager name of the GCP service-account JSON."
  type        = string
}

variable "redis_auth_secret_name" {
  description = "Secrets Manager name of the Redis AUTH token."
  type        = string
}

variable "secret_recovery_window_days" {
  description = "Days a deleted secret can still be restored."
  type        = number
}

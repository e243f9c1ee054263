output "code_bucket" {
  description = "Name and ARN of the code bucket."
  value       = { name = module.code_bucket.name, arn = module.code_bucket.arn }
}

output "user_data_bucket" {
  description = "Name and ARN of the user-data bucket."
  value       = { name = module.user_data_bucket.name, arn = module.user_data_bucket.arn }
}

output "logs_bucket" {
  description = "Name of the access-log bucket."
  value       = aws_s3_bucket.logs.id
}

output "functions_table" {
  description = "Name and ARN of the functions table."
  value       = { name = aws_dynamodb_table.functions.name, arn = aws_dynamodb_table.functions.arn }
}

output "jobs_table" {
  description = "Name and ARN of the jobs table."
  value       = { name = aws_dynamodb_table.jobs.name, arn = aws_dynamodb_table.jobs.arn }
}

output "keys_table" {
  description = "Name and ARN of the API keys table."
  value       = { name = aws_dynamodb_table.keys.name, arn = aws_dynamodb_table.keys.arn }
}

output "task_queue" {
  description = "Name, URL and ARN of the task queue."
  value       = { name = aws_sqs_queue.tasks.name, url = aws_sqs_queue.tasks.url, arn = aws_sqs_queue.tasks.arn }
}

output "dead_letter_queue" {
  description = "Name, URL and ARN of the dead-letter queue."
  value       = { name = aws_sqs_queue.dlq.name, url = aws_sqs_queue.dlq.url, arn = aws_sqs_queue.dlq.arn }
}

output "build_queue" {
  description = "Name, URL and ARN of the builds queue (layer builds, consumed by `nanogrid builder`)."
  value       = { name = aws_sqs_queue.builds.name, url = aws_sqs_queue.builds.url, arn = aws_sqs_queue.builds.arn }
}

output "build_dead_letter_queue" {
  description = "Name, URL and ARN of the builds queue's dead-letter queue."
  value       = { name = aws_sqs_queue.builds_dlq.name, url = aws_sqs_queue.builds_dlq.url, arn = aws_sqs_queue.builds_dlq.arn }
}

output "redis" {
  description = "Endpoint, port and replication group ID of Redis."
  value = {
    host = aws_elasticache_replication_group.this.primary_endpoint_address
    port = aws_elasticache_replication_group.this.port
    id   = aws_elasticache_replication_group.this.id
  }
}

output "secrets" {
  description = "Secret names and ARNs: gcp_credentials and redis_auth."
  value = {
    gcp_credentials = { name = aws_secretsmanager_secret.gcp_credentials.name, arn = aws_secretsmanager_secret.gcp_credentials.arn }
    redis_auth      = { name = aws_secretsmanager_secret.redis_auth.name, arn = aws_secretsmanager_secret.redis_auth.arn }
  }
}

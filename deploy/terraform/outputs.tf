output "alb_dns_name" {
  description = "Public DNS name of the API load balancer."
  value       = module.edge.alb_dns_name
}

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.network.vpc_id
}

output "subnet_ids" {
  description = "Subnet IDs by key."
  value       = module.network.subnet_ids
}

output "task_queue_url" {
  description = "URL of the SQS task queue (SQS_QUEUE_URL)."
  value       = module.data.task_queue.url
}

output "dead_letter_queue_url" {
  description = "URL of the dead-letter queue."
  value       = module.data.dead_letter_queue.url
}

output "build_queue_url" {
  description = "URL of the builds queue (NANOGRID_BUILD_QUEUE_URL; unset on the instances, which derive it from SQS_QUEUE_URL)."
  value       = module.data.build_queue.url
}

output "redis_endpoint" {
  description = "Primary endpoint of Redis (REDIS_HOST)."
  value       = module.data.redis.host
}

output "code_bucket" {
  description = "Name of the code bucket (S3_CODE_BUCKET)."
  value       = module.data.code_bucket.name
}

output "user_data_bucket" {
  description = "Name of the user-data bucket (S3_USER_DATA_BUCKET)."
  value       = module.data.user_data_bucket.name
}

output "functions_table" {
  description = "Name of the functions table."
  value       = module.data.functions_table.name
}

output "jobs_table" {
  description = "Name of the jobs table."
  value       = module.data.jobs_table.name
}

output "keys_table" {
  description = "Name of the API keys table (NANOGRID_KEYS_TABLE)."
  value       = module.data.keys_table.name
}

output "ai_endpoint" {
  description = "Ollama endpoint (AI_ENDPOINT)."
  value       = module.compute.ai_endpoint
}

output "controller_instance_ids" {
  description = "Controller instance IDs (SSM Session Manager targets)."
  value       = module.compute.controller_instance_ids
}

output "worker_asg_name" {
  description = "Name of the worker Auto Scaling group."
  value       = module.compute.worker_asg_name
}

output "alarm_topic_arn" {
  description = "SNS topic of the operations alarms."
  value       = module.observability.alarm_topic_arn
}

output "ansible_vars" {
  description = "Deployment values for ansible/inventories/<env>/group_vars/all.yml when pushing with ansible-playbook."
  value       = module.compute.ansible_vars
}

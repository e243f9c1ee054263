variable "name" {
  description = "Prefix for resource names (the project name)."
  type        = string
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "account_id" {
  description = "AWS account ID."
  type        = string
}

variable "partition" {
  description = "AWS partition (aws, aws-cn, ...)."
  type        = string
}

variable "ami_id" {
  description = "AMI for every instance; empty picks the latest Ubuntu 24.04 LTS from Canonical."
  type        = string
}

variable "controller_instance_type" {
  description = "Instance type of the controllers."
  type        = string
}

variable "worker_instance_type" {
  description = "Instance type of the workers."
  type        = string
}

variable "worker_docker_runtime" {
  description = "OCI runtime of the workers' sandbox containers (runc, crun or runsc)."
  type        = string
}

variable "ai_instance_type" {
  description = "Instance type of the AI node."
  type        = string
}

variable "ai_volume_size_gb" {
  description = "Root volume of the AI node (models live there)."
  type        = number
}

variable "controller_subnet_ids" {
  description = "Public subnets of the two controllers, by key (public_a, public_c)."
  type        = map(string)
}

variable "worker_subnet_ids" {
  description = "Private subnets the worker ASG spans."
  type        = list(string)
}

variable "ai_subnet_id" {
  description = "Private subnet of the AI node."
  type        = string
}

variable "security_group_ids" {
  description = "Security groups by role (controller, worker, ai)."
  type        = map(string)
}

variable "target_group_arn" {
  description = "ALB target group the controllers register with."
  type        = string
}

variable "worker_min_size" {
  description = "Minimum number of workers."
  type        = number
}

variable "worker_desired_capacity" {
  description = "Initial desired number of workers."
  type        = number
}

variable "worker_max_size" {
  description = "Maximum number of workers."
  type        = number
}

variable "scaling_policy" {
  description = "step: the founding document's alarms and +1/-1 policies; target: target tracking on backlog per instance."
  type        = string
}

variable "scale_out_threshold" {
  description = "Visible messages at or above which the step policy adds a worker."
  type        = number
}

variable "scale_in_threshold" {
  description = "Visible messages at or below which (for scale_in_evaluation_periods) the step policy removes a worker."
  type        = number
}

variable "alarm_period_seconds" {
  description = "Period of the queue-depth alarms."
  type        = number
}

variable "scale_out_evaluation_periods" {
  description = "Periods the scale-out alarm must breach."
  type        = number
}

variable "scale_in_evaluation_periods" {
  description = "Periods the scale-in alarm must breach."
  type        = number
}

variable "scaling_cooldown_seconds" {
  description = "Cooldown of the step policies (and the group's default cooldown)."
  type        = number
}

variable "backlog_target_per_instance" {
  description = "Target value of the backlog-per-instance metric (target policy)."
  type        = number
}

variable "instance_warmup_seconds" {
  description = "Seconds a new worker needs before its metrics count (boot + ansible-pull + image build)."
  type        = number
}

variable "metric_namespace" {
  description = "CloudWatch namespace of the metrics the platform publishes."
  type        = string
}

variable "backlog_metric_name" {
  description = "Name of the backlog-per-instance metric."
  type        = string
}

variable "drain_timeout_seconds" {
  description = "Heartbeat timeout of the termination lifecycle hook: how long a worker may drain before it is terminated anyway (the drain script extends it while jobs run)."
  type        = number
}

variable "code_bucket" {
  description = "Code bucket name and ARN."
  type        = object({ name = string, arn = string })
}

variable "user_data_bucket" {
  description = "User-data bucket name and ARN."
  type        = object({ name = string, arn = string })
}

variable "functions_table" {
  description = "Functions table name and ARN."
  type        = object({ name = string, arn = string })
}

variable "jobs_table" {
  description = "Jobs table name and ARN."
  type        = object({ name = string, arn = string })
}

variable "keys_table" {
  description = "API keys table name and ARN."
  type        = object({ name = string, arn = string })
}

variable "task_queue" {
  description = "Task queue name, URL and ARN."
  type        = object({ name = string, url = string, arn = string })
}

variable "dead_letter_queue" {
  description = "Dead-letter queue name, URL and ARN."
  type        = object({ name = string, url = string, arn = string })
}

variable "build_queue" {
  description = "Builds queue name, URL and ARN."
  type        = object({ name = string, url = string, arn = string })
}

variable "redis" {
  description = "Redis host, port and replication group ID."
  type        = object({ host = string, port = number, id = string })
}

variable "secrets" {
  description = "Secret names and ARNs (gcp_credentials, redis_auth)."
  type = object({
    gcp_credentials = object({ name = string, arn = string })
    redis_auth      = object({ name = string, arn = string })
  })
}

variable "secrets_prefix" {
  description = "Name prefix of the tenants' secrets (<prefix><tenant>/<name>, NANOGRID_SECRETS_PREFIX)."
  type        = string
}

variable "gcp_bucket_name" {
  description = "GCP Cloud Storage bucket of the code archive."
  type        = string
}

variable "celery_sns_fanout" {
  description = "Grant the SNS and dynamic-queue actions kombu's SNS fanout needs (broadcast: events, remote control). Off while the Celery settings do not enable supports_fanout."
  type        = bool
}

variable "dynamic_queue_prefix" {
  description = "Name prefix of the SNS topics and SQS queues kombu creates at run time for fanout."
  type        = string
}

variable "ansible_repo_url" {
  description = "Git URL ansible-pull clones at boot."
  type        = string
}

variable "ansible_repo_ref" {
  description = "Branch, tag or commit ansible-pull checks out."
  type        = string
}

variable "ansible_core_version" {
  description = "ansible-core version installed at boot."
  type        = string
}

variable "nanogrid_package_spec" {
  description = "pip requirement the playbooks install NanoGrid from."
  type        = string
}

variable "ollama_models" {
  description = "Models the AI node pulls."
  type        = list(string)
}

# Defaults are the founding document's figures; tests/fleet/test_terraform.py asserts them.

variable "project" {
  description = "Project name: prefix of every resource name."
  type        = string
  default     = "nanogrid"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.project))
    error_message = "project must be 2-21 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region (the founding document deploys to Seoul)."
  type        = string
  default     = "ap-northeast-2"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as ap-northeast-2."
  }
}

variable "extra_tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# --- Network ----------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC."
  type        = string
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be a valid IPv4 CIDR block."
  }
}

variable "subnets" {
  description = "The five subnets: CIDR, availability zone, tier (public/private) and the role they host. Keys public_a, public_c, private_a and private_c are referenced by the modules."
  type = map(object({
    cidr = string
    az   = string
    tier = string
    role = string
  }))
  default = {
    public_a         = { cidr = "10.0.1.0/24", az = "ap-northeast-2a", tier = "public", role = "controller, NAT gateway" }
    public_c         = { cidr = "10.0.2.0/24", az = "ap-northeast-2c", tier = "public", role = "controller" }
    private_reserved = { cidr = "10.0.10.0/24", az = "ap-northeast-2a", tier = "private", role = "reserved" }
    private_a        = { cidr = "10.0.20.0/24", az = "ap-northeast-2a", tier = "private", role = "worker, Redis, AI node" }
    private_c        = { cidr = "10.0.21.0/24", az = "ap-northeast-2c", tier = "private", role = "worker" }
  }

  validation {
    condition     = alltrue([for s in values(var.subnets) : can(cidrhost(s.cidr, 0)) && contains(["public", "private"], s.tier)])
    error_message = "Every subnet needs a valid CIDR and a tier of public or private."
  }

  validation {
    condition     = alltrue([for k in ["public_a", "public_c", "private_a", "private_c"] : contains(keys(var.subnets), k)])
    error_message = "subnets must contain public_a, public_c, private_a and private_c."
  }
}

variable "admin_ssh_cidrs" {
  description = "Networks allowed to SSH to the controllers (and from them to the AI node). Empty by default: operators use SSM Session Manager and no SSH port is open."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.admin_ssh_cidrs : can(cidrhost(c, 0)) && !endswith(c, "/0")])
    error_message = "admin_ssh_cidrs must be valid CIDRs and may not open SSH to the whole internet (/0)."
  }
}

# --- Edge -------------------------------------------------------------------------------------

variable "acm_certificate_arn" {
  description = "ACM certificate ARN for an HTTPS listener on 443; empty serves HTTP on port 80 only."
  type        = string
  default     = ""

  validation {
    condition     = var.acm_certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:", var.acm_certificate_arn))
    error_message = "acm_certificate_arn must be empty or an ACM certificate ARN."
  }
}

variable "alb_deletion_protection" {
  description = "Protect the ALB from deletion (turn off before terraform destroy)."
  type        = bool
  default     = true
}

variable "waf_rate_limit" {
  description = "Requests one IP may send per rate window before WAF answers 429."
  type        = number
  default     = 1000

  validation {
    condition     = var.waf_rate_limit >= 10 && var.waf_rate_limit <= 2000000000
    error_message = "waf_rate_limit must be between 10 and 2,000,000,000 (the WAF limits)."
  }
}

variable "waf_rate_window_seconds" {
  description = "Evaluation window of the WAF rate rule, in seconds (also the Retry-After value)."
  type        = number
  default     = 300

  validation {
    condition     = contains([60, 120, 300, 600], var.waf_rate_window_seconds)
    error_message = "waf_rate_window_seconds must be 60, 120, 300 or 600 (the values WAF accepts)."
  }
}

variable "waf_max_body_bytes" {
  description = "Largest request body WAF lets through, by Content-Length (the founding document's 1 GB)."
  type        = number
  default     = 1073741824

  validation {
    condition     = var.waf_max_body_bytes == 1073741824
    error_message = "The WAF Content-Length pattern encodes 1 GiB; change modules/edge/waf.tf together with this value."
  }
}

variable "code_route_prefix" {
  description = "URI prefix of the API routes whose request bodies are user code or user data."
  type        = string
  default     = "/functions"

  validation {
    condition     = startswith(var.code_route_prefix, "/")
    error_message = "code_route_prefix must start with /."
  }
}

# --- Compute ----------------------------------------------------------------------------------

variable "ami_id" {
  description = "AMI for every instance; empty uses the latest Ubuntu 24.04 LTS published by Canonical."
  type        = string
  default     = ""

  validation {
    condition     = var.ami_id == "" || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be empty or an AMI ID."
  }
}

variable "controller_instance_type" {
  description = "Instance type of the two controllers."
  type        = string
  default     = "t3.small"
}

variable "worker_instance_type" {
  description = "Instance type of the workers."
  type        = string
  default     = "t3.small"
}

variable "job_retention_days" {
  description = "Days a finished job's record (DynamoDB TTL) and stored output (S3 lifecycle) are kept; NANOGRID_JOB_RETENTION_DAYS, whose default is the same, says the applications the same."
  type        = number
  default     = 7
}

variable "worker_docker_runtime" {
  description = "OCI runtime of the workers' sandbox containers: runc (Docker's default), crun, or runsc (gVisor: a kernel of its own per sandbox, slower runs; README: Sandbox runtimes)."
  type        = string
  default     = "runc"

  validation {
    condition     = contains(["runc", "crun", "runsc"], var.worker_docker_runtime)
    error_message = "worker_docker_runtime must be runc, crun or runsc."
  }
}

variable "ai_instance_type" {
  description = "Instance type of the AI node."
  type        = string
  default     = "t3.large"
}

variable "ai_volume_size_gb" {
  description = "Root volume size of the AI node in GB (models are stored there)."
  type        = number
  default     = 60

  validation {
    condition     = var.ai_volume_size_gb >= 20
    error_message = "ai_volume_size_gb must be at least 20."
  }
}

variable "ollama_models" {
  description = "Models the AI node pulls at configuration time."
  type        = list(string)
  default     = ["llama3.2:3b"]
}

variable "worker_min_size" {
  description = "Minimum number of workers."
  type        = number
  default     = 2

  validation {
    condition     = var.worker_min_size >= 1
    error_message = "worker_min_size must be at least 1."
  }
}

variable "worker_desired_capacity" {
  description = "Initial desired number of workers (the scaling policies own it afterwards)."
  type        = number
  default     = 2

  validation {
    condition     = var.worker_desired_capacity >= 1
    error_message = "worker_desired_capacity must be at least 1."
  }
}

variable "worker_max_size" {
  description = "Maximum number of workers."
  type        = number
  default     = 5

  validation {
    condition     = var.worker_max_size >= 1 && var.worker_max_size <= 100
    error_message = "worker_max_size must be between 1 and 100."
  }
}

variable "worker_drain_timeout_seconds" {
  description = "Heartbeat timeout of the worker termination hook; the drain script renews it while jobs are still running."
  type        = number
  default     = 900

  validation {
    condition     = var.worker_drain_timeout_seconds >= 30 && var.worker_drain_timeout_seconds <= 7200
    error_message = "worker_drain_timeout_seconds must be between 30 and 7200 (the lifecycle hook limits)."
  }
}

# --- Scaling ----------------------------------------------------------------------------------

variable "scaling_policy" {
  description = "Worker scaling: \"step\" (the founding document's alarms, +1/-1 with a 300 s cooldown) or \"target\" (target tracking on the published backlog-per-instance metric)."
  type        = string
  default     = "step"

  validation {
    condition     = contains(["step", "target"], var.scaling_policy)
    error_message = "scaling_policy must be step or target."
  }
}

variable "scale_out_threshold" {
  description = "Visible messages at or above which the step policy adds one worker."
  type        = number
  default     = 10

  validation {
    condition     = var.scale_out_threshold >= 1
    error_message = "scale_out_threshold must be at least 1."
  }
}

variable "scale_in_threshold" {
  description = "Visible messages at or below which the step policy removes one worker."
  type        = number
  default     = 0

  validation {
    condition     = var.scale_in_threshold >= 0
    error_message = "scale_in_threshold must not be negative."
  }
}

variable "alarm_period_seconds" {
  description = "Period of the queue-depth alarms (SQS publishes its metrics every minute)."
  type        = number
  default     = 60

  validation {
    condition     = var.alarm_period_seconds >= 60 && var.alarm_period_seconds % 60 == 0
    error_message = "alarm_period_seconds must be a multiple of 60."
  }
}

variable "scale_out_evaluation_periods" {
  description = "Alarm periods the scale-out alarm must breach."
  type        = number
  default     = 1

  validation {
    condition     = var.scale_out_evaluation_periods >= 1
    error_message = "scale_out_evaluation_periods must be at least 1."
  }
}

variable "scale_in_evaluation_periods" {
  description = "Alarm periods the queue must stay empty before the step policy removes a worker (3 x 60 s = the founding document's 3 minutes)."
  type        = number
  default     = 3

  validation {
    condition     = var.scale_in_evaluation_periods >= 1
    error_message = "scale_in_evaluation_periods must be at least 1."
  }
}

variable "scaling_cooldown_seconds" {
  description = "Cooldown after a step scaling activity."
  type        = number
  default     = 300

  validation {
    condition     = var.scaling_cooldown_seconds >= 0
    error_message = "scaling_cooldown_seconds must not be negative."
  }
}

variable "backlog_target_per_instance" {
  description = "Target of the backlog-per-instance metric: acceptable queue wait / mean run time x runs per worker (120 s / 30 s x 2 = 8)."
  type        = number
  default     = 8

  validation {
    condition     = var.backlog_target_per_instance > 0
    error_message = "backlog_target_per_instance must be positive."
  }
}

variable "instance_warmup_seconds" {
  description = "Seconds from launch until a new worker takes jobs (boot, ansible-pull, runtime image build)."
  type        = number
  default     = 300

  validation {
    condition     = var.instance_warmup_seconds >= 0
    error_message = "instance_warmup_seconds must not be negative."
  }
}

variable "metric_namespace" {
  description = "CloudWatch namespace of the metrics NanoGrid publishes."
  type        = string
  default     = "NanoGrid"
}

variable "backlog_metric_name" {
  description = "Name of the backlog-per-instance metric `nanogrid scaling publish` sends."
  type        = string
  default     = "BacklogPerInstance"
}

# --- Data -------------------------------------------------------------------------------------

variable "task_queue_name" {
  description = "Name of the SQS task queue."
  type        = string
  default     = "nanogrid-task-queue"
}

variable "queue_visibility_timeout_seconds" {
  description = "Default visibility timeout of the task queue (the worker sets its own per receive)."
  type        = number
  default     = 3600

  validation {
    condition     = var.queue_visibility_timeout_seconds >= 0 && var.queue_visibility_timeout_seconds <= 43200
    error_message = "queue_visibility_timeout_seconds must be between 0 and 43200 (12 h, the SQS maximum)."
  }
}

variable "build_queue_visibility_timeout_seconds" {
  description = "Visibility timeout of the builds queue: above the builders' NANOGRID_BUILD_TIMEOUT_S (600 s by default) plus the time to pack and upload a layer."
  type        = number
  default     = 900

  validation {
    condition     = var.build_queue_visibility_timeout_seconds > 600 && var.build_queue_visibility_timeout_seconds <= 43200
    error_message = "build_queue_visibility_timeout_seconds must be above 600 (the build timeout) and at most 43200 (12 h, the SQS maximum)."
  }
}

variable "dlq_max_receive_count" {
  description = "Receives after which a message moves to the dead-letter queue."
  type        = number
  default     = 3

  validation {
    condition     = var.dlq_max_receive_count >= 1 && var.dlq_max_receive_count <= 1000
    error_message = "dlq_max_receive_count must be between 1 and 1000."
  }
}

variable "queue_age_alarm_seconds" {
  description = "Alarm when the oldest queued job has waited longer than this."
  type        = number
  default     = 900
}

variable "celery_sns_fanout" {
  description = "Grant the SNS topic and per-process queue actions of the broadcast transport (nanogrid/transport/sqs.py: kombu's SNS fanout for remote control and events). Must match supports_fanout in the Celery transport options."
  type        = bool
  default     = true
}

variable "dynamic_queue_prefix" {
  description = "Name prefix of the SNS topics and SQS queues kombu creates for fanout."
  type        = string
  default     = "nanogrid-fanout-"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{3,40}$", var.dynamic_queue_prefix))
    error_message = "dynamic_queue_prefix must be 3-40 letters, digits, hyphens or underscores."
  }
}

variable "code_bucket_name" {
  description = "Name of the code bucket (globally unique)."
  type        = string
  default     = "nanogrid-code-bucket"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.code_bucket_name))
    error_message = "code_bucket_name must be a valid S3 bucket name."
  }
}

variable "user_data_bucket_prefix" {
  description = "Prefix of the user-data bucket; the account ID is appended (nanogrid-user-data-{account_id})."
  type        = string
  default     = "nanogrid-user-data"
}

variable "functions_table_name" {
  description = "DynamoDB table of function metadata."
  type        = string
  default     = "NanoGridFunctions"
}

variable "jobs_table_name" {
  description = "DynamoDB table of job records."
  type        = string
  default     = "NanoGridJobs"
}

variable "keys_table_name" {
  description = "DynamoDB table of API keys (NANOGRID_KEYS_TABLE)."
  type        = string
  default     = "NanoGridApiKeys"
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t3.micro"
}

variable "redis_engine_version" {
  description = "ElastiCache Redis engine version."
  type        = string
  default     = "7.1"

  validation {
    condition     = can(regex("^7\\.", var.redis_engine_version))
    error_message = "redis_engine_version must be a 7.x version (the parameter group family is redis7)."
  }
}

variable "gcp_credentials_secret_name" {
  description = "Secrets Manager name of the GCP service-account JSON."
  type        = string
  default     = "nanogrid/gcp-credentials"
}

variable "redis_auth_secret_name" {
  description = "Secrets Manager name of the Redis AUTH token."
  type        = string
  default     = "nanogrid/redis-auth"
}

variable "secrets_prefix" {
  description = "Name prefix of the tenants' secrets in Secrets Manager (<prefix><tenant>/<name>, NANOGRID_SECRETS_PREFIX): the controllers manage and the workers read secrets under it."
  type        = string
  default     = "nanogrid/"

  validation {
    condition     = can(regex("^[A-Za-z0-9_+=.@-][A-Za-z0-9/_+=.@-]*/$", var.secrets_prefix))
    error_message = "secrets_prefix must end with / and hold only the characters of a secret name (no wildcard)."
  }
}

variable "secret_recovery_window_days" {
  description = "Days a deleted secret stays restorable (0 deletes at once)."
  type        = number
  default     = 7

  validation {
    condition     = var.secret_recovery_window_days == 0 || (var.secret_recovery_window_days >= 7 && var.secret_recovery_window_days <= 30)
    error_message = "secret_recovery_window_days must be 0 or between 7 and 30."
  }
}

variable "gcp_bucket_name" {
  description = "GCP Cloud Storage bucket that archives code that ran successfully."
  type        = string
  default     = "nanogrid-archive"
}

# --- Configuration management -----------------------------------------------------------------

variable "ansible_repo_url" {
  description = "Git URL of this repository, cloned by ansible-pull on every instance at boot."
  type        = string
  default     = "https://github.com/example/nanogrid.git"
}

variable "ansible_repo_ref" {
  description = "Branch, tag or commit ansible-pull checks out (pin a tag in production)."
  type        = string
  default     = "main"
}

variable "ansible_core_version" {
  description = "ansible-core version installed on the instances at boot."
  type        = string
  default     = "2.19.14"
}

variable "nanogrid_package_spec" {
  description = "pip requirement NanoGrid is installed from on the instances."
  type        = string
  default     = "nanogrid @ git+https://github.com/example/nanogrid.git@main"
}

# --- Observability ----------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups (WAF, VPC flow logs)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts."
  }
}

variable "alarm_email" {
  description = "E-mail address subscribed to the operations alarm topic; empty subscribes nobody."
  type        = string
  default     = ""
}

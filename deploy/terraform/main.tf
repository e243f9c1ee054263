# NanoGrid on AWS: the founding document's architecture in five modules.
#
#   network        VPC, five subnets, IGW, NAT, routes, S3/DynamoDB endpoints, security groups
#   data           S3 buckets, DynamoDB tables, SQS queues (tasks, builds) + DLQs, ElastiCache Redis, secrets
#   edge           ALB, target group, listeners, WAF
#   compute        instance roles, controllers, AI node, worker launch template + ASG, scaling
#   observability  alarm topic, alarms, flow logs, dashboard

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
}

module "network" {
  source = "./modules/network"

  name            = var.project
  vpc_cidr        = var.vpc_cidr
  subnets         = var.subnets
  nat_subnet_key  = "public_a"
  admin_ssh_cidrs = var.admin_ssh_cidrs
  enable_https    = var.acm_certificate_arn != ""

  log_kms_key_arn    = module.observability.ops_kms_key_arn
  log_retention_days = var.log_retention_days
}

module "data" {
  source = "./modules/data"

  name                                   = var.project
  account_id                             = local.account_id
  code_bucket_name                       = var.code_bucket_name
  user_data_bucket_prefix                = var.user_data_bucket_prefix
  job_retention_days                     = var.job_retention_days
  functions_table_name                   = var.functions_table_name
  jobs_table_name                        = var.jobs_table_name
  keys_table_name                        = var.keys_table_name
  task_queue_name                        = var.task_queue_name
  queue_visibility_timeout_seconds       = var.queue_visibility_timeout_seconds
  build_queue_visibility_timeout_seconds = var.build_queue_visibility_timeout_seconds
  dlq_max_receive_count                  = var.dlq_max_receive_count
  redis_node_type                        = var.redis_node_type
  redis_engine_version                   = var.redis_engine_version
  redis_subnet_ids                       = [module.network.subnet_ids["private_a"], module.network.subnet_ids["private_c"]]
  redis_az                               = var.subnets["private_a"].az
  redis_security_group_id                = module.network.security_group_ids["redis"]
  gcp_credentials_secret_name            = var.gcp_credentials_secret_name
  redis_auth_secret_name                 = var.redis_auth_secret_name
  secret_recovery_window_days            = var.secret_recovery_window_days
}

module "edge" {
  source = "./modules/edge"

  name                    = var.project
  vpc_id                  = module.network.vpc_id
  public_subnet_ids       = [module.network.subnet_ids["public_a"], module.network.subnet_ids["public_c"]]
  alb_security_group_id   = module.network.security_group_ids["alb"]
  acm_certificate_arn     = var.acm_certificate_arn
  deletion_protection     = var.alb_deletion_protection
  access_logs_bucket      = module.data.logs_bucket
  log_kms_key_arn         = module.observability.ops_kms_key_arn
  log_retention_days      = var.log_retention_days
  waf_rate_limit          = var.waf_rate_limit
  waf_rate_window_seconds = var.waf_rate_window_seconds
  waf_max_body_bytes      = var.waf_max_body_bytes
  code_route_prefix       = var.code_route_prefix
}

module "compute" {
  source = "./modules/compute"

  name       = var.project
  region     = var.region
  account_id = local.account_id
  partition  = local.partition
  ami_id     = var.ami_id

  controller_instance_type = var.controller_instance_type
  worker_instance_type     = var.worker_instance_type
  worker_docker_runtime    = var.worker_docker_runtime
  ai_instance_type         = var.ai_instance_type
  ai_volume_size_gb        = var.ai_volume_size_gb

  controller_subnet_ids = {
    public_a = module.network.subnet_ids["public_a"]
    public_c = module.network.subnet_ids["public_c"]
  }
  worker_subnet_ids  = [module.network.subnet_ids["private_a"], module.network.subnet_ids["private_c"]]
  ai_subnet_id       = module.network.subnet_ids["private_a"]
  security_group_ids = module.network.security_group_ids
  target_group_arn   = module.edge.target_group_arn

  worker_min_size         = var.worker_min_size
  worker_desired_capacity = var.worker_desired_capacity
  worker_max_size         = var.worker_max_size
  drain_timeout_seconds   = var.worker_drain_timeout_seconds

  scaling_policy               = var.scaling_policy
  scale_out_threshold          = var.scale_out_threshold
  scale_in_threshold           = var.scale_in_threshold
  alarm_period_seconds         = var.alarm_period_seconds
  scale_out_evaluation_periods = var.scale_out_evaluation_periods
  scale_in_evaluation_periods  = var.scale_in_evaluation_periods
  scaling_cooldown_seconds     = var.scaling_cooldown_seconds
  backlog_target_per_instance  = var.backlog_target_per_instance
  instance_warmup_seconds      = var.instance_warmup_seconds
  metric_namespace             = var.metric_namespace
  backlog_metric_name          = var.backlog_metric_name

  code_bucket       = module.data.code_bucket
  user_data_bucket  = module.data.user_data_bucket
  functions_table   = module.data.functions_table
  jobs_table        = module.data.jobs_table
  keys_table        = module.data.keys_table
  task_queue        = module.data.task_queue
  dead_letter_queue = module.data.dead_letter_queue
  build_queue       = module.data.build_queue
  redis             = module.data.redis
  secrets           = module.data.secrets
  secrets_prefix    = var.secrets_prefix
  gcp_bucket_name   = var.gcp_bucket_name

  celery_sns_fanout    = var.celery_sns_fanout
  dynamic_queue_prefix = var.dynamic_queue_prefix

  ansible_repo_url      = var.ansible_repo_url
  ansible_repo_ref      = var.ansible_repo_ref
  ansible_core_version  = var.ansible_core_version
  nanogrid_package_spec = var.nanogrid_package_spec
  ollama_models         = var.ollama_models
}

module "observability" {
  source = "./modules/observability"

  name                       = var.project
  region                     = var.region
  account_id                 = local.account_id
  partition                  = local.partition
  log_retention_days         = var.log_retention_days
  alarm_email                = var.alarm_email
  dead_letter_queue_name     = module.data.dead_letter_queue.name
  task_queue_name            = module.data.task_queue.name
  queue_age_alarm_seconds    = var.queue_age_alarm_seconds
  alb_arn_suffix             = module.edge.alb_arn_suffix
  target_group_arn_suffix    = module.edge.target_group_arn_suffix
  redis_replication_group_id = module.data.redis.id
  worker_asg_name            = module.compute.worker_asg_name

  backlog_metric = {
    namespace = var.metric_namespace
    name      = var.backlog_metric_name
    required  = var.scaling_policy == "target"
  }
}

# Controllers (two, one per AZ, behind the ALB), the worker launch template and Auto Scaling
# group, and the AI node. Every instance configures itself at boot with ansible-pull.

data "aws_ami" "ubuntu" {
  most_recent = true
  owners      = ["099720109477"] # Canonical

  filter {
    name   = "name"
    values = ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  ami_id = var.ami_id != "" ? var.ami_id : data.aws_ami.ubuntu.id

  ai_endpoint = "http://${aws_instance.ai.private_ip}:11434"

  # Values every NanoGrid process needs; the Ansible roles turn them into the env files.
  common_vars = {
    nanogrid_aws_region              = var.region
    nanogrid_package_spec            = var.nanogrid_package_spec
    nanogrid_sqs_queue_url           = var.task_queue.url
    nanogrid_redis_host              = var.redis.host
    nanogrid_redis_port              = var.redis.port
    nanogrid_redis_tls               = true
    nanogrid_redis_auth_secret_id    = var.secrets.redis_auth.name
    nanogrid_s3_code_bucket          = var.code_bucket.name
    nanogrid_s3_user_data_bucket     = var.user_data_bucket.name
    nanogrid_functions_table         = var.functions_table.name
    nanogrid_jobs_table              = var.jobs_table.name
    nanogrid_keys_table              = var.keys_table.name
    nanogrid_gcp_bucket_name         = var.gcp_bucket_name
    nanogrid_gcp_credentials_secret  = var.secrets.gcp_credentials.name
    nanogrid_ai_endpoint             = local.ai_endpoint
    nanogrid_metric_namespace        = var.metric_namespace
    nanogrid_worker_asg_name         = local.worker_asg_name
    nanogrid_worker_lifecycle_hook   = local.lifecycle_hook_name
    nanogrid_sqs_visibility_timeout  = 3600
    nanogrid_backlog_metric_name     = var.backlog_metric_name
    nanogrid_secrets_prefix          = var.secrets_prefix
  }

  bootstrap = {
    # Controllers also run Flower (on localhost; reached through Session Manager).
    controller = {
      inventory_groups = ["controllers", "flower"]
      vars             = local.common_vars
    }
    worker = {
      inventory_groups = ["workers"]
      vars             = merge(local.common_vars, { worker_docker_runtime = var.worker_docker_runtime })
    }
    ai = {
      inventory_groups = ["ai_nodes"]
      vars             = { ai_node_models = var.ollama_models }
    }
  }

  user_data = {
    for role, b in local.bootstrap : role => templatefile("${path.module}/templates/user_data.sh.tftpl", {
      ansible_core_version = var.ansible_core_version
      ansible_repo_url     = var.ansible_repo_url
      ansible_repo_ref     = var.ansible_repo_ref
      inventory_groups     = b.inventory_groups
      bootstrap_json       = jsonencode(b.vars)
    })
  }
}

# --- Controllers -------------------------------------------------------------------------------
resource "aws_instance" "controller" {
  #checkov:skip=CKV_AWS_88:The founding document places the controllers in the public subnets; they need a public address to reach the internet without the NAT, and their only open port is 8080 from the ALB security group.
  for_each = var.controller_subnet_ids

  ami                    = local.ami_id
  instance_type          = var.controller_instance_type
  subnet_id              = each.value
  vpc_security_group_ids = [var.security_group_ids.controller]
  iam_instance_profile   = aws_iam_instance_profile.controller.name
  # The founding document puts the controllers in the public subnets; their only inbound port
  # is 8080 from the ALB's security group.
  associate_public_ip_address = true
  monitoring                  = true
  ebs_optimized               = true
  user_data                   = local.user_data["controller"]
  user_data_replace_on_change = false

  metadata_options {
    http_tokens                 = "required"
    http_endpoint               = "enabled"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 20
    encrypted   = true
  }

  tags = {
    Name = "${var.name}-controller-${replace(each.key, "public_", "")}"
    Role = "controller"
  }

  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_lb_target_group_attachment" "controller" {
  for_each = aws_instance.controller

  target_group_arn = var.target_group_arn
  target_id        = each.value.id
  port             = 8080
}

# --- AI node ----------------------------------------------------------------------------------
resource "aws_instance" "ai" {
  ami                    = local.ami_id
  instance_type          = var.ai_instance_type
  subnet_id              = var.ai_subnet_id
  vpc_security_group_ids = [var.security_group_ids.ai]
  iam_instance_profile   = aws_iam_instance_profile.ai.name
  monitoring             = true
  ebs_optimized          = true
  user_data              = local.user_data["ai"]

  metadata_options {
    http_tokens                 = "required"
    http_endpoint               = "enabled"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.ai_volume_size_gb
    encrypted   = true
  }

  tags = {
    Name = "${var.name}-ai"
    Role = "ai_node"
  }

  lifecycle {
    ignore_changes = [ami]
  }
}

# --- Workers ----------------------------------------------------------------------------------
resource "aws_launch_template" "worker" {
  name                   = "${var.name}-worker"
  image_id               = local.ami_id
  instance_type          = var.worker_instance_type
  vpc_security_group_ids = [var.security_group_ids.worker]
  user_data              = base64encode(local.user_data["worker"])
  ebs_optimized          = true
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.worker.arn
  }

  monitoring {
    enabled = true
  }

  metadata_options {
    http_tokens                 = "required"
    http_endpoint               = "enabled"
    http_put_response_hop_limit = 1
    # The drain script polls autoscaling/target-lifecycle-state here (IMDSv2); no tags needed.
    instance_metadata_tags = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/sda1"
    ebs {
      volume_type           = "gp3"
      volume_size           = 30
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags = {
      Name = "${var.name}-worker"
      Role = "worker"
    }
  }

  tag_specifications {
    resource_type = "volume"
    tags = {
      Name = "${var.name}-worker"
    }
  }
}

resource "aws_autoscaling_group" "worker" {
  name                = local.worker_asg_name
  min_size            = var.worker_min_size
  desired_capacity    = var.worker_desired_capacity
  max_size            = var.worker_max_size
  vpc_zone_identifier = var.worker_subnet_ids
  health_check_type   = "EC2"
  default_cooldown    = var.scaling_cooldown_seconds
  # Used by target tracking and by instance refresh; step policies rely on the cooldown.
  default_instance_warmup = var.instance_warmup_seconds

  launch_template {
    id      = aws_launch_template.worker.id
    version = aws_launch_template.worker.latest_version
  }

  # The founding document's operations metrics: GroupDesiredCapacity, GroupInServiceInstances.
  enabled_metrics = [
    "GroupMinSize",
    "GroupMaxSize",
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
    "GroupTotalInstances",
  ]

  # A new launch template version (new AMI, new user data) rolls the workers; the termination
  # hook below lets each old worker finish its running jobs first.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
      instance_warmup        = var.instance_warmup_seconds
    }
  }

  # Scale-in must not kill running jobs: the instance waits in Terminating:Wait while the drain
  # script stops Celery gracefully, then completes the lifecycle action.
  initial_lifecycle_hook {
    name                 = local.lifecycle_hook_name
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    default_result       = "CONTINUE"
    heartbeat_timeout    = var.drain_timeout_seconds
  }

  tag {
    key                 = "Role"
    value               = "worker"
    propagate_at_launch = true
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-worker"
    propagate_at_launch = true
  }

  lifecycle {
    # The scaling policies own desired capacity after creation.
    ignore_changes = [desired_capacity]

    precondition {
      condition     = var.worker_min_size <= var.worker_desired_capacity && var.worker_desired_capacity <= var.worker_max_size
      error_message = "Need worker_min_size <= worker_desired_capacity <= worker_max_size."
    }
  }
}

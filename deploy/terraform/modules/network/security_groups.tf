# Security groups as the founding document lists them, with one change: no SSH from anywhere.
# Operators reach every instance through SSM Session Manager (the instance roles carry
# AmazonSSMManagedInstanceCore); SSH opens only when admin_ssh_cidrs names specific networks.

resource "aws_security_group" "alb" {
  #checkov:skip=CKV2_AWS_5:Attached in another module (ALB, instances, launch template, ElastiCache) through the network module outputs, which the check does not follow.
  name        = "${var.name}-alb"
  description = "Internet-facing ALB: HTTP (and HTTPS) from anywhere, out to the controllers only"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.name}-alb" }
}

resource "aws_security_group" "controller" {
  #checkov:skip=CKV2_AWS_5:Attached in another module (ALB, instances, launch template, ElastiCache) through the network module outputs, which the check does not follow.
  name        = "${var.name}-controller"
  description = "Controllers: the REST API on 8080 from the ALB only"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.name}-controller" }
}

resource "aws_security_group" "worker" {
  #checkov:skip=CKV2_AWS_5:Attached in another module (ALB, instances, launch template, ElastiCache) through the network module outputs, which the check does not follow.
  name        = "${var.name}-worker"
  description = "Workers: no inbound traffic, egress only"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.name}-worker" }
}

resource "aws_security_group" "ai" {
  #checkov:skip=CKV2_AWS_5:Attached in another module (ALB, instances, launch template, ElastiCache) through the network module outputs, which the check does not follow.
  name        = "${var.name}-ai"
  description = "AI node: Ollama on 11434 from the workers only"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.name}-ai" }
}

resource "aws_security_group" "redis" {
  #checkov:skip=CKV2_AWS_5:Attached in another module (ALB, instances, launch template, ElastiCache) through the network module outputs, which the check does not follow.
  name        = "${var.name}-redis"
  description = "ElastiCache Redis: 6379 from the controllers and the workers"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.name}-redis" }
}

# --- ALB -------------------------------------------------------------------------------
resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260:The internet-facing ALB serves the public API on port 80 (the founding document listener); WAF filters it.
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from the internet (redirected to HTTPS when a certificate is set)"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  count = var.enable_https ? 1 : 0

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from the internet"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "alb_to_controller" {
  security_group_id            = aws_security_group.alb.id
  description                  = "Forward to the controllers' API port"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.controller.id
}

# --- Controllers -----------------------------------------------------------------------
resource "aws_vpc_security_group_ingress_rule" "controller_api" {
  security_group_id            = aws_security_group.controller.id
  description                  = "REST API from the ALB"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_ingress_rule" "controller_ssh" {
  for_each = toset(var.admin_ssh_cidrs)

  security_group_id = aws_security_group.controller.id
  description       = "SSH from an administrator network (off unless admin_ssh_cidrs is set)"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

# --- AI node ---------------------------------------------------------------------------
resource "aws_vpc_security_group_ingress_rule" "ai_ollama" {
  security_group_id            = aws_security_group.ai.id
  description                  = "Ollama API from the workers only"
  ip_protocol                  = "tcp"
  from_port                    = 11434
  to_port                      = 11434
  referenced_security_group_id = aws_security_group.worker.id
}

resource "aws_vpc_security_group_ingress_rule" "ai_ssh_from_controller" {
  #checkov:skip=CKV_AWS_24:False positive: the source is the controller security group, not 0.0.0.0/0, and the rule exists only when admin SSH is enabled.
  # The founding document's "22 from the controller SG" exists only where SSH is in use at all.
  count = length(var.admin_ssh_cidrs) > 0 ? 1 : 0

  security_group_id            = aws_security_group.ai.id
  description                  = "SSH from the controllers (only when admin SSH is enabled)"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  referenced_security_group_id = aws_security_group.controller.id
}

# --- Redis -----------------------------------------------------------------------------
resource "aws_vpc_security_group_ingress_rule" "redis_from_controller" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis from the controllers"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.controller.id
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_worker" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis from the workers"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.worker.id
}

# --- Egress of the instances -----------------------------------------------------------
# HTTPS reaches the AWS APIs (through the gateway endpoints or the NAT gateway), PyPI, the
# package mirrors and the git remote that ansible-pull reads; HTTP reaches the Ubuntu mirrors.
locals {
  instance_sgs = {
    controller = aws_security_group.controller.id
    worker     = aws_security_group.worker.id
    ai         = aws_security_group.ai.id
  }
}

resource "aws_vpc_security_group_egress_rule" "https_out" {
  for_each = local.instance_sgs

  security_group_id = each.value
  description       = "HTTPS out: AWS APIs, package indexes, git"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "http_out" {
  for_each = local.instance_sgs

  security_group_id = each.value
  description       = "HTTP out: Ubuntu package mirrors"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "controller_to_redis" {
  security_group_id            = aws_security_group.controller.id
  description                  = "Job state in Redis"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.redis.id
}

resource "aws_vpc_security_group_egress_rule" "worker_to_redis" {
  security_group_id            = aws_security_group.worker.id
  description                  = "Job state in Redis"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.redis.id
}

resource "aws_vpc_security_group_egress_rule" "worker_to_ai" {
  security_group_id            = aws_security_group.worker.id
  description                  = "Inference on the AI node"
  ip_protocol                  = "tcp"
  from_port                    = 11434
  to_port                      = 11434
  referenced_security_group_id = aws_security_group.ai.id
}

resource "aws_vpc_security_group_egress_rule" "controller_to_ai_ssh" {
  count = length(var.admin_ssh_cidrs) > 0 ? 1 : 0

  security_group_id            = aws_security_group.controller.id
  description                  = "SSH to the AI node (only when admin SSH is enabled)"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  referenced_security_group_id = aws_security_group.ai.id
}

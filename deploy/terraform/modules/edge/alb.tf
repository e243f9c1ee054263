# Internet-facing ALB: listener 80 (redirecting to 443 when a certificate is given), target
# group on 8080 with the health check on /health/live (the API itself, not the workers: the
# controllers are healthy before any worker exists), and /metrics refused at the edge.

locals {
  https = var.acm_certificate_arn != ""
  # The API's unauthenticated Prometheus endpoint (nanogrid/metrics.py).
  metrics_path = "/metrics"
}

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_76:Log4j protection comes from AWSManagedRulesKnownBadInputsRuleSet (in the web ACL); the check also demands AWSManagedRulesAnonymousIpList, whose hosting-provider list would block legitimate API clients running in clouds.
  name                       = "${var.name}-alb"
  internal                   = false
  load_balancer_type         = "application"
  security_groups            = [var.alb_security_group_id]
  subnets                    = var.public_subnet_ids
  drop_invalid_header_fields = true
  # The API trusts exactly one proxy (NANOGRID_TRUSTED_PROXIES=1, ansible/roles/controller): the
  # ALB appends the client's address to X-Forwarded-For, and the API takes that last entry as
  # the client of its rate limit. "append" is the default; stated because the API depends on it.
  xff_header_processing_mode = "append"
  enable_deletion_protection = var.deletion_protection
  # Runs wait for their result up to NANOGRID_MAX_WAIT_S (300 s); the ALB must not cut them.
  idle_timeout = 330

  access_logs {
    bucket  = var.access_logs_bucket
    prefix  = "alb"
    enabled = true
  }

  tags = { Name = "${var.name}-alb" }
}

resource "aws_lb_target_group" "api" {
  #checkov:skip=CKV_AWS_378:TLS ends at the ALB; the hop to the controllers on 8080 stays inside the VPC and is restricted to the ALB security group.
  name                 = "${var.name}-api"
  port                 = 8080
  protocol             = "HTTP"
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = 30

  health_check {
    enabled             = true
    path                = "/health/live"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Port 80 is the founding document listener; it forwards only while no certificate is configured and redirects to 443 once acm_certificate_arn is set.
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = local.https ? "redirect" : "forward"
    target_group_arn = local.https ? null : aws_lb_target_group.api.arn

    dynamic "redirect" {
      for_each = local.https ? [1] : []
      content {
        port        = "443"
        protocol    = "HTTPS"
        status_code = "HTTP_301"
      }
    }
  }
}

resource "aws_lb_listener" "https" {
  count = local.https ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.acm_certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
}

# The API serves Prometheus metrics on GET /metrics without a key and without a rate limit
# (nanogrid/metrics.py: a plain app route, outside the API's guards), meant for a scraper on the
# private network. From the internet it is refused here, on the listener that forwards to the
# controllers (HTTPS when a certificate is set; plain HTTP then only redirects). This matches the
# path as sent; the API also serves /%6Detrics and //metrics (gunicorn decodes the path, Flask
# routes // as /), which the WAF rule block-metrics (waf.tf) refuses on the decoded, normalized
# path.
resource "aws_lb_listener_rule" "metrics_private" {
  listener_arn = local.https ? aws_lb_listener.https[0].arn : aws_lb_listener.http.arn
  priority     = 1

  condition {
    path_pattern {
      values = [local.metrics_path, "${local.metrics_path}/*"]
    }
  }

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      message_body = "{\"error\":{\"code\":\"forbidden\",\"message\":\"${local.metrics_path} is served to the private network only\"}}"
      status_code  = "403"
    }
  }
}

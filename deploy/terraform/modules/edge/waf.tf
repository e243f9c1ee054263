# WAF on the ALB: the AWS managed rule groups (SQL injection, core rule set, known bad inputs),
# a rate rule (1000 requests per 5 minutes per IP, answered with 429 + Retry-After), the
# founding document's 1 GB body limit, and the API's /metrics refused from the internet.
#
# Uploading Python source must not be blocked: on an ALB, WAF sees only the first 8 KB of a
# body, the core rule set's SizeRestrictions_BODY blocks every body over 8 KB, and its XSS/LFI/
# RFI body rules and the SQLi body rules match ordinary code ("<script>" in a string literal,
# "' OR 1=1 --" in a test). So those body rules are set to count, and a later rule blocks a
# request carrying one of their labels unless it is a POST or PUT under the code routes
# (/functions...), whose bodies the API treats strictly as data. The API enforces its own size
# limits (NANOGRID_MAX_CODE_BYTES, NANOGRID_MAX_INPUT_BYTES) with 413.

locals {
  crs_body_rules  = ["SizeRestrictions_BODY", "CrossSiteScripting_BODY", "GenericLFI_BODY", "GenericRFI_BODY", "EC2MetaDataSSRF_BODY"]
  sqli_body_rules = ["SQLi_BODY", "SQLiExtendedPatterns_BODY"]

  body_rule_labels = concat(
    [for r in ["SizeRestrictions_Body", "CrossSiteScripting_Body", "GenericLFI_Body", "GenericRFI_Body", "EC2MetaDataSSRF_Body"] : "awswaf:managed:aws:core-rule-set:${r}"],
    [for r in ["SQLi_Body", "SQLiExtendedPatterns_Body"] : "awswaf:managed:aws:sql-database:${r}"],
  )

  code_route_label = "nanogrid:code-route"

  # Content-Length values greater than 1073741824 (1 GiB): 11+ digits, or 10 digits that
  # compare greater digit by digit. tests/fleet/test_terraform.py checks the boundary values.
  content_length_over_1gib = "^([1-9]\\d{10,}|[2-9]\\d{9}|1[1-9]\\d{8}|10[89]\\d{7}|107[4-9]\\d{6}|1073[89]\\d{5}|10737[5-9]\\d{4}|107374[2-9]\\d{3}|10737419\\d{2}|10737418[3-9]\\d|107374182[5-9])$"
}

resource "aws_wafv2_regex_pattern_set" "content_length_over_max" {
  name        = "${var.name}-content-length-over-max"
  description = "Content-Length above ${var.waf_max_body_bytes} bytes"
  scope       = "REGIONAL"

  regular_expression {
    regex_string = local.content_length_over_1gib
  }

  lifecycle {
    precondition {
      condition     = var.waf_max_body_bytes == 1073741824
      error_message = "The Content-Length pattern encodes 1073741824 bytes (1 GiB); change the pattern with the variable."
    }
  }
}

resource "aws_wafv2_web_acl" "this" {
  name        = "${var.name}-alb"
  description = "NanoGrid API: managed rules, rate limit, body size"
  scope       = "REGIONAL"

  default_action {
    allow {}
  }

  custom_response_body {
    key          = "rate-limited"
    content_type = "APPLICATION_JSON"
    content      = "{\"error\":\"rate_limited\",\"message\":\"too many requests from this address; retry later\"}"
  }

  custom_response_body {
    key          = "metrics-private"
    content_type = "APPLICATION_JSON"
    content      = "{\"error\":{\"code\":\"forbidden\",\"message\":\"${local.metrics_path} is served to the private network only\"}}"
  }

  custom_response_body {
    key          = "body-too-large"
    content_type = "APPLICATION_JSON"
    content      = "{\"error\":\"payload_too_large\",\"message\":\"request body over the limit\"}"
  }

  # 1. Rate limit per client IP.
  rule {
    name     = "rate-limit-per-ip"
    priority = 0

    action {
      block {
        custom_response {
          response_code            = 429
          custom_response_body_key = "rate-limited"
          response_header {
            name  = "Retry-After"
            value = tostring(var.waf_rate_window_seconds)
          }
        }
      }
    }

    statement {
      rate_based_statement {
        limit                 = var.waf_rate_limit
        evaluation_window_sec = var.waf_rate_window_seconds
        aggregate_key_type    = "IP"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-rate-limit"
      sampled_requests_enabled   = true
    }
  }

  # 2. Body size, by the declared Content-Length (WAF cannot read past 8 KB of an ALB body).
  rule {
    name     = "body-size-limit"
    priority = 1

    action {
      block {
        custom_response {
          response_code            = 413
          custom_response_body_key = "body-too-large"
        }
      }
    }

    statement {
      regex_pattern_set_reference_statement {
        arn = aws_wafv2_regex_pattern_set.content_length_over_max.arn
        field_to_match {
          single_header {
            name = "content-length"
          }
        }
        text_transformation {
          priority = 0
          type     = "NONE"
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-body-size"
      sampled_requests_enabled   = true
    }
  }

  # 3. Known bad inputs (Log4j JNDI, Java deserialization, ...).
  rule {
    name     = "aws-known-bad-inputs"
    priority = 2

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-known-bad-inputs"
      sampled_requests_enabled   = true
    }
  }

  # 4. Core rule set, body rules counted (decided by rule 7).
  rule {
    name     = "aws-common"
    priority = 3

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesCommonRuleSet"

        dynamic "rule_action_override" {
          for_each = local.crs_body_rules
          content {
            name = rule_action_override.value
            action_to_use {
              count {}
            }
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-common"
      sampled_requests_enabled   = true
    }
  }

  # 5. SQL injection, body rules counted (decided by rule 7).
  rule {
    name     = "aws-sqli"
    priority = 4

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesSQLiRuleSet"

        dynamic "rule_action_override" {
          for_each = local.sqli_body_rules
          content {
            name = rule_action_override.value
            action_to_use {
              count {}
            }
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-sqli"
      sampled_requests_enabled   = true
    }
  }

  # 6. Label the code routes: POST or PUT under /functions.
  rule {
    name     = "label-code-routes"
    priority = 5

    action {
      count {}
    }

    rule_label {
      name = local.code_route_label
    }

    statement {
      and_statement {
        statement {
          byte_match_statement {
            search_string         = var.code_route_prefix
            positional_constraint = "STARTS_WITH"
            field_to_match {
              uri_path {}
            }
            text_transformation {
              priority = 0
              type     = "NONE"
            }
          }
        }
        statement {
          regex_match_statement {
            regex_string = "^(POST|PUT)$"
            field_to_match {
              method {}
            }
            text_transformation {
              priority = 0
              type     = "NONE"
            }
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-code-routes"
      sampled_requests_enabled   = true
    }
  }

  # 7. A body rule matched outside the code routes: block, as the managed rule would have.
  rule {
    name     = "block-body-matches-outside-code-routes"
    priority = 6

    action {
      block {}
    }

    statement {
      and_statement {
        statement {
          or_statement {
            dynamic "statement" {
              for_each = local.body_rule_labels
              content {
                label_match_statement {
                  scope = "LABEL"
                  key   = statement.value
                }
              }
            }
          }
        }
        statement {
          not_statement {
            statement {
              label_match_statement {
                scope = "LABEL"
                key   = local.code_route_label
              }
            }
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-body-outside-code-routes"
      sampled_requests_enabled   = true
    }
  }

  # 8. The API's /metrics (no key, no rate limit) is for the private network: refused from the
  # internet however it is spelled. gunicorn percent-decodes the path before Flask routes it, and
  # Flask serves //metrics like /metrics, so the match is on the decoded path with repeated
  # slashes and dot segments removed (the ALB listener rule in alb.tf sees the literal path only).
  rule {
    name     = "block-metrics"
    priority = 7

    action {
      block {
        custom_response {
          response_code            = 403
          custom_response_body_key = "metrics-private"
        }
      }
    }

    statement {
      byte_match_statement {
        search_string         = local.metrics_path
        positional_constraint = "STARTS_WITH"
        field_to_match {
          uri_path {}
        }
        text_transformation {
          priority = 0
          type     = "URL_DECODE"
        }
        text_transformation {
          priority = 1
          type     = "NORMALIZE_PATH"
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-metrics-private"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "${var.name}-alb"
    sampled_requests_enabled   = true
  }
}

resource "aws_wafv2_web_acl_association" "alb" {
  resource_arn = aws_lb.this.arn
  web_acl_arn  = aws_wafv2_web_acl.this.arn
}

# WAF logs: the log group name must start with aws-waf-logs-.
resource "aws_cloudwatch_log_group" "waf" {
  name              = "aws-waf-logs-${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
}

resource "aws_wafv2_web_acl_logging_configuration" "this" {
  resource_arn            = aws_wafv2_web_acl.this.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf.arn]

  redacted_fields {
    single_header {
      name = "authorization"
    }
  }
}

variable "name" {
  description = "Prefix for resource names (the project name)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the target group."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets of the ALB (two AZs)."
  type        = list(string)
}

variable "alb_security_group_id" {
  description = "Security group of the ALB."
  type        = string
}

variable "acm_certificate_arn" {
  description = "ACM certificate for the HTTPS listener; empty serves HTTP on 80 only."
  type        = string
}

variable "deletion_protection" {
  description = "Protect the ALB from deletion."
  type        = bool
}

variable "access_logs_bucket" {
  description = "S3 bucket receiving ALB access logs (prefix alb/)."
  type        = string
}

variable "log_kms_key_arn" {
  description = "KMS key encrypting the WAF log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the WAF log group."
  type        = number
}

variable "waf_rate_limit" {
  description = "Requests per IP per evaluation window before WAF answers 429."
  type        = number
}

variable "waf_rate_window_seconds" {
  description = "Evaluation window of the rate rule."
  type        = number
}

variable "waf_max_body_bytes" {
  description = "Largest request body (by Content-Length) WAF lets through; the founding document's 1 GB."
  type        = number
}

variable "code_route_prefix" {
  description = "URI prefix of the routes whose bodies are user code or user data (POST/PUT): the body-inspecting managed rules only count there."
  type        = string
}

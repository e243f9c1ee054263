variable "name" {
  description = "Prefix for resource names (the project name)."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC."
  type        = string
}

variable "subnets" {
  description = "Subnets by key: CIDR, availability zone, and tier (public or private). Keys used elsewhere: public_a, public_c, private_a, private_c."
  type = map(object({
    cidr = string
    az   = string
    tier = string
    role = string
  }))
}

variable "nat_subnet_key" {
  description = "Key of the public subnet that holds the single NAT gateway."
  type        = string
}

variable "admin_ssh_cidrs" {
  description = "CIDRs allowed to reach the controllers on port 22. Empty (the default) opens no SSH port at all: operators use SSM Session Manager."
  type        = list(string)
}

variable "enable_https" {
  description = "Whether the ALB has an HTTPS listener, so its security group opens 443."
  type        = bool
}

variable "log_kms_key_arn" {
  description = "KMS key encrypting the flow-log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the flow-log group."
  type        = number
}

variable "bucket_name" {
  description = "Name of the bucket."
  type        = string
}

variable "log_bucket" {
  description = "Bucket receiving this bucket's server access logs."
  type        = string
}

variable "noncurrent_version_days" {
  description = "Days an overwritten or deleted object version is kept."
  type        = number
}

variable "expire_prefixes" {
  description = "Key prefix => days after which objects under it expire (none: objects stay)."
  type        = map(number)
  default     = {}
}

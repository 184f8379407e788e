variable "hosts" {
  description = "Fleet hosts by name: SSH address and private address."
  type = map(object({
    ssh_host   = string
    private_ip = string
  }))
  # Documentation addresses (RFC 5737 / RFC 1918): replace with yours.
  default = {
    gw-a = { ssh_host = "203.0.113.10", private_ip = "10.0.0.10" }
    gw-b = { ssh_host = "203.0.113.11", private_ip = "10.0.0.11" }
  }
}

variable "ssh_user" {
  description = "SSH user with passwordless sudo (or root)."
  type        = string
  default     = "deploy"
}

variable "ssh_private_key_path" {
  description = "SSH private key on this machine; empty uses the SSH agent."
  type        = string
  default     = "~/.ssh/id_ed25519"
  sensitive   = true
}

variable "domain" {
  description = "Public name of the gateway."
  type        = string
  default     = "gw.example.com"
}

variable "metrics_allow" {
  description = "CIDRs that may read /metrics through nginx (Prometheus should scrape replicas directly)."
  type        = list(string)
  default     = ["10.0.0.0/24"]
}

variable "cmg_package" {
  description = "pip requirement of the gateway installed on the hosts."
  type        = string
  default     = "context-memory-gateway==0.1.0"
}

variable "secrets_source_path" {
  description = "Optional local env file uploaded to /etc/cmg/secrets.env (DATABASE_URL, REDIS_URL, CMG_MASTER_KEY, OPENROUTER_API_KEY). Empty: the file is provisioned on the hosts by other means."
  type        = string
  default     = ""
  sensitive   = true
}

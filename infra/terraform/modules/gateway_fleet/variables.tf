# Inputs of the gateway_fleet module. Secrets are passed by reference only: paths of
# env files and names of the variables they must define, never their values.

variable "hosts" {
  description = "Linux hosts (Debian/Ubuntu with systemd) of the fleet, by name. ssh_host is the address Terraform connects to; private_ip is the address the replicas bind to and nginx proxies to."
  type = map(object({
    ssh_host   = string
    private_ip = string
  }))

  validation {
    condition     = length(var.hosts) > 0
    error_message = "Give at least one host."
  }
}

variable "ssh_user" {
  description = "SSH user on every host: root, or a user with passwordless sudo."
  type        = string
  default     = "root"
}

variable "ssh_private_key_path" {
  description = "Path, on the machine running Terraform, of the SSH private key. Empty: use the SSH agent."
  type        = string
  default     = ""
  sensitive   = true
}

variable "ssh_port" {
  description = "SSH port of every host."
  type        = number
  default     = 22
}

variable "replicas_per_host" {
  description = "Gateway replicas (cmg@PORT.service, one `cmg serve` each) per host."
  type        = number
  default     = 2

  validation {
    condition     = var.replicas_per_host >= 1 && var.replicas_per_host <= 32
    error_message = "The replicas_per_host value must be between 1 and 32."
  }
}

variable "gateway_base_port" {
  description = "Replica i on a host listens on gateway_base_port + i, on the host's private_ip."
  type        = number
  default     = 8080
}

variable "uvicorn_workers" {
  description = "CMG_WORKERS: uvicorn worker processes inside each replica."
  type        = number
  default     = 1
}

variable "workers_per_host" {
  description = "RQ workers (cmg-worker@PORT.service) per host; PORT is where each serves /metrics."
  type        = number
  default     = 1
}

variable "worker_metrics_base_port" {
  description = "Worker i on a host serves Prometheus metrics on worker_metrics_base_port + i (CMG_METRICS_PORT)."
  type        = number
  default     = 9100
}

variable "scheduler_host" {
  description = "Name (a key of hosts) of the one host that runs `cmg scheduler` and `cmg migrate`. Empty: the first name in sorted order."
  type        = string
  default     = ""
}

variable "domain" {
  description = "Public name of the gateway (nginx server_name), e.g. gw.example.com."
  type        = string
}

variable "tls_enabled" {
  description = "Serve HTTPS (HTTP/2) at the edge. The certificate and key must already be on every host."
  type        = bool
  default     = true
}

variable "tls_cert_path" {
  description = "Path on the hosts of the PEM certificate chain (e.g. /etc/letsencrypt/live/DOMAIN/fullchain.pem)."
  type        = string
  default     = ""
}

variable "tls_key_path" {
  description = "Path on the hosts of the PEM private key."
  type        = string
  default     = ""
}

variable "listen_port" {
  description = "Port nginx listens on. null: 443 with TLS, 80 without."
  type        = number
  default     = null
}

variable "metrics_allow" {
  description = "CIDRs allowed to read /metrics through nginx. Empty: nobody (scrape replicas directly)."
  type        = list(string)
  default     = []
}

variable "admin_allow" {
  description = "Addresses or CIDRs nginx lets reach /admin (the master key still guards it). Default: loopback only (run admin calls on a host, or list your VPN's CIDR)."
  type        = list(string)
  default     = ["127.0.0.1/32", "::1/128"]
}

variable "max_body_mib" {
  description = "Largest request body in MiB: nginx client_max_body_size and the gateway's CMG_MAX_BODY_BYTES."
  type        = number
  default     = 8
}

variable "cmg_package" {
  description = "pip requirement installed into /opt/cmg/venv on every host: a pinned version (context-memory-gateway==0.1.0) or a wheel URL."
  type        = string
  default     = "context-memory-gateway==0.1.0"
}

variable "pip_extra_args" {
  description = "Extra pip arguments, e.g. \"--index-url https://pypi.internal/simple\"."
  type        = string
  default     = ""
}

variable "log_level" {
  description = "CMG_LOG_LEVEL of every process."
  type        = string
  default     = "INFO"
}

variable "openrouter_base_url" {
  description = "OPENROUTER_BASE_URL (not a secret)."
  type        = string
  default     = "https://openrouter.ai/api/v1"
}

variable "providers_file" {
  description = "CMG_PROVIDERS: path on the hosts of the providers TOML file. Empty: the gateway's default."
  type        = string
  default     = ""
}

variable "secrets_env_file" {
  description = "Path on the hosts of the root-owned env file with the secrets (see required_secrets). Managed outside Terraform (vault agent, SOPS, cloud secret manager) unless secrets_source_path is set."
  type        = string
  default     = "/etc/cmg/secrets.env"
}

variable "secrets_source_path" {
  description = "Optional path, on the machine running Terraform, of an env file to upload to secrets_env_file. Only its hash enters the state."
  type        = string
  default     = ""
  sensitive   = true
}

variable "required_secrets" {
  description = "Names of the variables secrets_env_file must define; checked on every host before any service is restarted. REDIS_URL must also carry a password (redis://:PASSWORD@host or rediss://USER:PASSWORD@host)."
  type        = list(string)
  default     = ["DATABASE_URL", "REDIS_URL", "CMG_MASTER_KEY", "OPENROUTER_API_KEY"]
}

variable "migrate_env_file" {
  description = "Path on the scheduler host of an env file whose DATABASE_URL uses the schema owner role (cmg_owner, see infra/sql/init.sql) for `cmg migrate`. Empty: skip migrations (run them yourself)."
  type        = string
  default     = "/etc/cmg/migrate.env"
}

output "upstreams" {
  description = "Every gateway replica of the fleet (private_ip:port), as nginx sees them."
  value       = local.upstreams
}

output "nginx_config" {
  description = "The rendered edge config installed as /etc/nginx/conf.d/cmg-gateway.conf on every host."
  value       = local.nginx_conf
}

output "scheduler_host" {
  description = "The host that runs `cmg scheduler` and `cmg migrate`."
  value       = local.scheduler_host
}

output "prometheus_targets" {
  description = "Scrape targets for Prometheus static_configs: gateway replicas and worker metrics ports."
  value = {
    gateway = local.upstreams
    worker = flatten([
      for name in local.host_names : [
        for port in local.worker_ports : "${var.hosts[name].private_ip}:${port}"
      ]
    ])
  }
}

output "upstreams" {
  description = "Gateway replicas behind every nginx."
  value       = module.fleet.upstreams
}

output "nginx_config" {
  description = "Rendered edge config."
  value       = module.fleet.nginx_config
}

output "prometheus_targets" {
  description = "Paste into prometheus.yml static_configs."
  value       = module.fleet.prometheus_targets
}

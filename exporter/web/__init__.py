"""Everything about serving: routes, the HTTP server, basic auth and the web configuration."""

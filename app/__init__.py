"""The example service: a JSON relay to one upstream, through environ['http.pool']."""

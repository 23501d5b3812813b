"""Running the server in production: health, metrics, live metrics, resources, lifecycle, logs."""

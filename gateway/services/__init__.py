"""Services: the gateway's logic, called by thin API routes, the CLI and workers."""

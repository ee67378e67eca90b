"""The edge: codec, Faust app, HTTP and MCP adapters, metrics and the command line."""

"""Thin HTTP and WebSocket adapters over the gateway package."""

"""The REST API (FastAPI). Routes stay thin: state changes go through sagan_service.jobs."""

"""Backups of the platform database: full (pg_dump) and per organization (COPY), streamed into a store."""

"""Cross-cutting helpers: processes and devices (Accelerate), loggers and progress bars, token redaction."""

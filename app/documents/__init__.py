"""Server-side Yjs documents: one per (project, document), kept durable by a store."""

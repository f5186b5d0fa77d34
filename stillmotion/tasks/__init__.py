"""Tasks: the task table is the queue (schema, migrations and the ``TaskStore``)."""

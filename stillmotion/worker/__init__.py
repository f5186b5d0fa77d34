"""The worker: claims tasks from the task table and runs them through engines."""

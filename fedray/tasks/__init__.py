"""Tasks, one module each, registered by name in group `task` (`data.task`)."""

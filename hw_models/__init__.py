"""Built-in targets, each described by one ``.hw`` file in this folder."""

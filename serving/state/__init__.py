"""What serving reads: the catalogue and users, and the online feature stores."""

"""The daemon and its companions: sd_notify, check, listen."""

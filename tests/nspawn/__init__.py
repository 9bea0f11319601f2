"""systemd-nspawn test harness: see container.py."""

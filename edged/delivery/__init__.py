"""Getting turns off the device: the durable spool and the MQTT publisher."""

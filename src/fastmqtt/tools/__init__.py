"""The command-line tools beside the balancer: the load generator (bench), the HAProxy config
translator (convert), the admin client (ctl), the local demo, and the local Mosquitto launcher
(brokers) that the demo, the tests and the benchmarks share. Nothing on the connection path
imports from here."""

# The boot-time workload: nothing. The guest reached init (the
# `linux_init` event) and powers off at once.
true

"""Several worker processes sharing one port: the supervisor that runs them (`supervisor`),
the worker's entry point (`worker`), the private socket through which workers answer for
themselves (`peers`), and the pure merging of their stats (`merge`) and metrics
(`exposition`)."""

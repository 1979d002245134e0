"""
The roles one ``twistd fbstream`` process can run; each builds a Service from
its configuration, and the roles talk to one another only over the network.
"""

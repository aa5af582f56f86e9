"""The application shell: the `waxflow` command and process setup (logging, exit codes).

The layers below it: `flows/` is pure logic, `connectors/` all I/O. Only this package (and the
two modules that wire a dataflow, flows/inlet.py and flows/outlet.py) may use both.
"""

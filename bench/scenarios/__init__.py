"""The four scenarios, one module each. Each runs the service and the reference the same way,
in this run, and returns table rows plus the raw measurements for the JSON."""

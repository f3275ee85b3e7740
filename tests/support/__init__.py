"""What tests, the benchmark and the load test share: a service process started and waited
for, a stream reader that checks the wire contract, metric scraping, and the requests we send."""

"""Load testing: the load generator and the no-op baseline server it is compared against."""

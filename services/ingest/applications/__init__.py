"""Applications (tenants): their routes, schemas, service functions and scoped keys."""

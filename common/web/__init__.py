"""HTTP: the Tornado application, request/response envelope, errors, validation, authentication, blocking reads."""

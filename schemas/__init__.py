"""Data contracts of the Florenz data engine: records, Arrow schemas, the coverage plan, the config,
and the shard sample layout. Everything else imports these; these import nothing of the project's."""

"""kafkashake: MongoDB change data capture through Kafka. This package is the command line and the demo."""

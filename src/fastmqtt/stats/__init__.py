"""What fastmqtt shows about itself: the stats listener and admin API (http), the rows every
view is made of (rows), the HTML page (html), the Prometheus text (prometheus), and the Unix
socket the same listener can serve on (unix_listener)."""

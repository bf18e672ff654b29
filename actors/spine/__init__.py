"""The request spine: SerialLink, Framing and Dispatcher carry a request from the serial port
to its handler and the answer back."""

{#- kiosk/power/mismatch is informational: kiosk_power.verify fires it for
    listeners after it has built and posted the alert itself (runner
    kiosk_alert.post). No reactor posts from this event: a kiosk can fire
    the same tag with any data. This file renders nothing and is kept only
    so that an existing reactor entry pointing at it stays harmless; remove
    that entry from the top master's reactor list. #}

# Every minion runs the slicer; what it gets depends only on the minion id the
# master authenticated (pillar/kiosk_fleet.sls): unknown ids get nothing.
base:
  '*':
    - kiosk_fleet
